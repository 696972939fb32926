"""fruitflow's Airflow pieces: how a step is submitted and the operator that returns its manifest.

The names Airflow knows the pipeline and its connections by, in one place."""

DAG_ID = "fruit_pipeline"
AWS_CONN_ID = "aws_default"  # S3: its endpoint_url extra, and the keys where the connection holds some
SPARK_CONN_ID = "spark_default"  # the Spark standalone master


def connection_variable(conn_id: str) -> str:
    """The environment variable Airflow reads a connection from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"
