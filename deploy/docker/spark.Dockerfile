# Spark from the official image at the project's Spark version, on Python 3.11: PySpark needs the same
# Python minor version in the driver (Airflow's image, 3.11) and in the executors.
FROM apache/spark:4.3.0-scala2.13-java17-python3-ubuntu AS spark

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps curl tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=spark /opt/spark /opt/spark
ENV SPARK_HOME=/opt/spark PATH=/opt/spark/bin:$PATH PYSPARK_PYTHON=python3.11
COPY constraints.txt /tmp/constraints.txt
# The jobs' pinned Python set (OpenCV, ONNX Runtime, TensorFlow for model export, scikit-learn, ...).
RUN pip install --no-cache-dir -c /tmp/constraints.txt \
      numpy "pandas<3" pyarrow opencv-python-headless onnxruntime tensorflow-cpu tf2onnx onnx \
      scikit-learn scipy matplotlib pillow boto3 \
 && useradd --create-home --uid 185 spark
USER spark
ENTRYPOINT ["/usr/bin/tini", "--"]
