"""Chatops: Drover driven from a Slack-compatible slash command.

The pure core lives here, free of HTTP and of the bus, so each part is tested alone:

- ``signature``: is a request really from the chat server, and recent?
- ``grammar``: the text of a slash command, parsed into a typed command or a helpful reply.
- ``access``: may this person deploy, approve or operate in this environment (the rules
  are the fleet file's, ``orchestrator.fleet.access``)?
"""
