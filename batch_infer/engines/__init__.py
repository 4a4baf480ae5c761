"""Where fragments are scored: ``local`` (a thread pool in this process) or ``dask`` (tasks on a
Dask cluster). Both run ``fragment.run_fragment``; an engine decides only where."""
