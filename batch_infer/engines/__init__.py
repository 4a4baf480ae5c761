"""Where fragments are scored. The local engine is ``batch_infer.executor`` (a thread pool in
this process); ``dask`` runs the same ``runner.score_fragment`` as tasks on a Dask cluster."""
