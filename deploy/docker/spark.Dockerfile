# A Spark node: the master, the workers and the history server, and the executors' Python. Spark itself
# is pyspark's distribution, from fruitflow's Spark-node extra pinned by constraints.txt (one Spark version
# with the Airflow image's drivers); no Airflow, no TensorFlow. Python 3.11, as in the Airflow image:
# PySpark needs the same Python minor version in the driver and in the executors.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps curl tini \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md constraints.txt /tmp/fruitflow/
COPY fruitflow /tmp/fruitflow/fruitflow
COPY plugins /tmp/fruitflow/plugins
COPY spark_jobs /tmp/fruitflow/spark_jobs
RUN pip install --no-cache-dir "/tmp/fruitflow[spark-node]" -c /tmp/fruitflow/constraints.txt \
 && ln -s "$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" /opt/spark \
 && rm -rf /tmp/fruitflow \
 && useradd --create-home --uid 185 spark
# The executors' interpreter; the applications also name it (spark.pyspark.python, FRUITFLOW_PYSPARK_PYTHON).
ENV SPARK_HOME=/opt/spark PATH=/opt/spark/bin:$PATH PYSPARK_PYTHON=/usr/local/bin/python3.11
# hadoop-aws and its dependencies on the executors' class path (FRUITFLOW_SPARK_JARS names the same
# folder on the driver), resolved at build time with Spark's own Ivy.
# With them, Spark's S3A committer binding (one jar, no dependencies): FRUITFLOW_S3A_COMMITTER=magic.
ARG HADOOP_AWS_VERSION=3.5.0
ARG SPARK_HADOOP_CLOUD_VERSION=4.0.0
RUN java -cp "$(ls /opt/spark/jars/ivy-*.jar)" org.apache.ivy.Main \
      -dependency org.apache.hadoop hadoop-aws "$HADOOP_AWS_VERSION" -confs default -types jar \
      -cache /tmp/ivy -retrieve "/opt/hadoop-aws/[organisation]_[artifact]-[revision](-[classifier]).[ext]" \
 && java -cp "$(ls /opt/spark/jars/ivy-*.jar)" org.apache.ivy.Main \
      -dependency org.apache.spark spark-hadoop-cloud_2.13 "$SPARK_HADOOP_CLOUD_VERSION" -confs default -types jar \
      -notransitive -cache /tmp/ivy \
      -retrieve "/opt/hadoop-aws/[organisation]_[artifact]-[revision](-[classifier]).[ext]" \
 && rm -rf /tmp/ivy
USER spark
ENTRYPOINT ["/usr/bin/tini", "--"]
