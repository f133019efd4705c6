"""The shop: four services talking through topics and a queue.

``python -m samples.shop`` runs all four in one process on ``memory://`` and prints the
flow; ``MESSAGEBUS_URL=amqp://... python -m samples.shop --service payments`` runs one
service on a real broker.
"""
