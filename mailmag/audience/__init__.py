"""Who receives the magazine: subscribers, consent, bounces."""
