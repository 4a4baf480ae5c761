"""What a run tells the outside world: metrics, the HTML report, lineage events, statistics.

Everything here reads a ``RunFacts`` the runner fills in as it goes; nothing here changes a run.
"""
