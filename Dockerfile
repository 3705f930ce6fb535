# The simulator with its bundled topologies and scenarios.
# Build: docker build -t dicom-rehearsal .
# Run:   docker run --rm dicom-rehearsal run topologies/hospital-cutover.yaml scenarios/cutover.yaml --out /tmp/run
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 rehearse
WORKDIR /opt/dicom-rehearsal
COPY pyproject.toml README.md ./
COPY simulator ./simulator
RUN pip install --no-cache-dir .
COPY topologies ./topologies
COPY scenarios ./scenarios

USER rehearse
ENV REHEARSE_CACHE_DIR=/home/rehearse/.cache/dicom-rehearsal \
    TCP_NODELAY=1
HEALTHCHECK --interval=30s --timeout=5s CMD ["rehearse", "--help"]
ENTRYPOINT ["rehearse"]
CMD ["--help"]
