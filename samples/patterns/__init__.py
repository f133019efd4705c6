"""One small runnable service scene per messaging pattern of DESIGN section 2b.

Each module has a ``main(url)`` coroutine (0 when the scene went as the pattern promises,
1 otherwise, with the reason printed) and runs as ``python -m samples.patterns.<name> [URL]``
(URL default: ``MESSAGEBUS_URL``, else ``memory://``):

- :mod:`.request_reply` - a pricing service answers quote requests;
- :mod:`.delay` - a reminder service gets a delayed and an undelayed reminder;
- :mod:`.batch` - a bulk indexer takes orders in batches, a poison message goes to the
  dead letters alone;
- :mod:`.routing` - an audit log on ``orders.*`` and an EU-only subscription by header filter.
"""
