"""Tools that run outside the stream: scan and query files, replay them to a topic, create topics
and work the dead-letter topic."""
