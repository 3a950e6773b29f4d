"""The postback dispatcher: consumes conversion events and delivers publishers' postbacks."""
