"""Who may use the web console: accounts and roles, logins and sessions, the audit log."""
