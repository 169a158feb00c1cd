"""What a request body may hold and how it becomes items: the rules of a prediction, a label and a resource
report (validation), the C decoder of well-formed batches (fastpath), and the columns handed to the statistics
(columns).

Imports the statistics and the config, never the engine or serve.
"""
