"""What is sent: organizations, items, issues and their rendering."""
