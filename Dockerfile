# The simulator with its bundled topologies and scenarios, run as a non-root user.
#
# Build: docker build -t dicom-rehearsal .
# Run:   docker run --rm -v "$PWD/runs:/opt/dicom-rehearsal/runs" dicom-rehearsal \
#          run topologies/hospital-cutover.yaml scenarios/cutover.yaml
# Lab:   lab/compose.yaml builds this image and runs it next to Orthanc, Mosquitto
#        and Toxiproxy; see the README section "Live events, Toxiproxy and the lab".
#
# The build stage installs the package into a virtual environment, so the final
# image carries no build tools and no pip cache.

FROM python:3.11-slim-bookworm AS build

WORKDIR /src
COPY pyproject.toml README.md ./
COPY simulator ./simulator
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .


FROM python:3.11-slim-bookworm

# DCMTK's storescu and echoscu send into a run held open by a hold step. The
# version is Debian bookworm's, the one the tests use; pinning an exact Debian
# revision would break the build at the next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 rehearse \
    && useradd --uid 10001 --gid 10001 --create-home rehearse

COPY --from=build /opt/venv /opt/venv

WORKDIR /opt/dicom-rehearsal
COPY topologies ./topologies
COPY scenarios ./scenarios
# Runs are written under runs/ by default; mount a volume there to keep them.
RUN mkdir runs && chown 10001:10001 runs

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REHEARSE_CACHE_DIR=/home/rehearse/.cache/dicom-rehearsal \
    TCP_NODELAY=1

USER 10001:10001

# Loads and checks a bundled topology and scenario: the install, the package
# data and the bundled files are all there. A run itself is a batch job.
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD ["rehearse", "validate", "topologies/hospital-cutover.yaml", "scenarios/cutover.yaml"]

ENTRYPOINT ["rehearse"]
CMD ["--help"]
