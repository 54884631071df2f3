"""What the four pipeline scripts share: settings, topics, schemas, Kafka clients, the consume loop.

Nothing in this package reads os.environ except common.settings, and nothing in it configures logging
except common.cli.
"""
