# classcast: `make run` starts the whole service on the embedded default; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
export DJANGO_SETTINGS_MODULE := config.settings

.PHONY: run setup test test-embedded test-scaled system-deps bench-deps bench clean

$(STAMP): requirements.txt node_modules/.installed
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

# hls.js for the viewer page, from the npm registry (pinned in package.json / package-lock.json).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

# On the embedded default the first start also makes var/secret_key and var/demo_password (0600);
# seed_demo refuses to create demo logins anywhere else unless asked (see README "Production settings").
setup: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo

run: setup
	@echo
	@echo "classcast is starting on http://$(HOST):$(PORT)/  (log in with a demo login above)"
	@echo
	HOST=$(HOST) PORT=$(PORT) CLASSCAST_SIGNALING_URL=ws://$(HOST):$(PORT) $(BIN)/honcho start -f Procfile

# Chromium and coturn are Debian packages the browser and TURN tests drive; pip cannot install them.
system-deps:
	@command -v chromium >/dev/null && command -v turnserver >/dev/null || { \
	  echo "installing chromium and coturn (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium coturn >/dev/null; }

# The whole suite twice: scaled out (PostgreSQL, Redis channel layer and broker, a separate media node
# process) and on the embedded default (SQLite, in-memory layer, filesystem broker, node in the web process).
test: $(STAMP) system-deps test-scaled test-embedded

# Scaled out, the settings refuse to start without a shared secret key: one random key per run.
test-scaled: $(STAMP)
	DJANGO_SECRET_KEY=$${DJANGO_SECRET_KEY:-$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')} \
	DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test} \
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/0} \
	CELERY_BROKER_URL=$${TEST_CELERY_BROKER_URL:-redis://127.0.0.1:6379/1} \
	CLASSCAST_VAR_DIR=$(CURDIR)/var/test-scaled \
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

test-embedded: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL CLASSCAST_VAR_DIR=$(CURDIR)/var/test-embedded \
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# bench/hls_origin.py measures the README's nginx setup beside the app's own origin.
bench-deps:
	@command -v nginx >/dev/null || { \
	  echo "installing nginx (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

bench: $(STAMP) system-deps bench-deps
	$(PY) bench/join_time.py
	$(PY) bench/compositor.py
	$(PY) bench/ladder.py
	$(PY) bench/hls_ingest.py
	$(PY) bench/recorder.py
	$(PY) bench/sfu.py
	$(PY) bench/hls_origin.py
	$(PY) bench/class_capacity.py
	$(PY) bench/glass_to_glass.py

clean:
	rm -rf $(VENV) var
