# Spark from the official image at the project's Spark version, on Python 3.11: PySpark needs the same
# Python minor version in the driver (Airflow's image, 3.11) and in the executors.
FROM apache/spark:4.3.0-scala2.13-java17-python3-ubuntu AS spark

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps curl tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=spark /opt/spark /opt/spark
# The executors' interpreter; the applications also name it (spark.pyspark.python, FRUITFLOW_PYSPARK_PYTHON).
ENV SPARK_HOME=/opt/spark PATH=/opt/spark/bin:$PATH PYSPARK_PYTHON=/usr/local/bin/python3.11
COPY constraints.txt /tmp/constraints.txt
# The executors' share of the pinned set (what the UDFs import), at the versions of constraints.txt.
RUN pip install --no-cache-dir -c /tmp/constraints.txt \
      numpy "pandas<3" pyarrow opencv-python-headless onnxruntime tensorflow-cpu tf2onnx onnx \
      scikit-learn scipy matplotlib pillow boto3 \
 && useradd --create-home --uid 185 spark
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
