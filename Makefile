# The message store under docker compose. `make help` lists the targets.
#
#   make up      build static binaries + images, start everything, show the logs' paths
#   make tail    follow every log file under ./logs
#   make down    stop and remove the containers and the network
#   make e2e     end-to-end test in its own, throw-away compose project

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Compose project name: container names are fixed (headnode, datanode1, ...),
# so one stack per machine unless CONTAINER_PREFIX is set too.
PROJECT ?= msgstore
# Host folder mounted at /logs in every container.
LOGS_DIR ?= $(CURDIR)/logs
# Scalable data nodes for `make scale`.
N ?= 1

# `docker compose` (v2 plugin) when present, else the standalone docker-compose.
ifeq ($(origin COMPOSE),undefined)
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo 'docker compose'; \
	elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
endif

# Containers run as the invoking user, so the log files are theirs to read
# and delete; when that user is root, as 10001 instead: never as root.
HOST_UID ?= $(shell id -u)
HOST_GID ?= $(shell id -g)
ifeq ($(HOST_UID),0)
override HOST_UID := 10001
override HOST_GID := 10001
endif
ifeq ($(HOST_GID),0)
override HOST_GID := 10001
endif
export HOST_UID HOST_GID LOGS_DIR

DC = $(COMPOSE) -p $(PROJECT) --profile scale

.PHONY: stack-up stack-down stack-test
.PHONY: help up down build binaries images logs-dir token tail logs compose-logs ps scale e2e bench test clean-logs check-compose

help: ## this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  make %-13s %s\n", $$1, $$2 }'

check-compose:
	@if [ -z "$(COMPOSE)" ]; then \
		echo "Neither 'docker compose' nor 'docker-compose' was found; install one of them." >&2; exit 1; fi

binaries: ## build the static release binaries (target/static)
	docker/build.sh binaries

images: ## build the static binaries and the four images
	docker/build.sh all

build: images ## same as images

token: ## write a random cluster token to .env (git-ignored) unless one is set
	@if [ -n "$${CLUSTER_TOKEN:-}" ]; then \
		echo "using CLUSTER_TOKEN from the environment"; \
	elif [ -f .env ] && grep -q '^CLUSTER_TOKEN=.' .env; then \
		echo "using the cluster token in .env"; \
	else \
		umask 077; \
		printf 'CLUSTER_TOKEN=%s\n' "$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" >> .env; \
		echo "wrote a new random cluster token to .env"; \
	fi

logs-dir: ## create the log folder, writable by the containers' user
	@mkdir -p "$(LOGS_DIR)"
	@if [ "$$(id -u)" = 0 ]; then \
		chown -R "$(HOST_UID):$(HOST_GID)" "$(LOGS_DIR)"; \
	elif [ ! -w "$(LOGS_DIR)" ]; then \
		echo "$(LOGS_DIR) is not writable by $$(id -un); fix its owner or set LOGS_DIR" >&2; exit 1; \
	elif [ -n "$$(find "$(LOGS_DIR)" -mindepth 1 ! -user "$(HOST_UID)" -print -quit)" ]; then \
		echo "warning: some entries under $(LOGS_DIR) belong to another user; containers cannot write there:" >&2; \
		find "$(LOGS_DIR)" -mindepth 1 ! -user "$(HOST_UID)" -maxdepth 1 >&2; \
	fi

# When `make up` began, for the time to the first acknowledged message.
up: UP_START := $(shell date +%s.%N)
up: check-compose token images logs-dir ## build everything, start the stack, print where the logs are
	$(DC) up -d --remove-orphans echo-server echo-client headnode datanode1 datanode2 datanode3 client
	@START=$(UP_START) docker/after-up.sh

# Stopping and listing need no token, but compose reads the whole file.
down ps compose-logs: export CLUSTER_TOKEN := $(or $(CLUSTER_TOKEN),not-needed-to-stop-or-list)

down: check-compose ## stop and remove the containers and the network (log files stay)
	-@docker ps -q --filter "label=com.docker.compose.project=$(PROJECT)" --filter status=paused \
		| xargs -r docker unpause >/dev/null
	$(DC) down --remove-orphans --timeout 5

ps: check-compose ## list the stack's containers
	$(DC) ps

scale: check-compose token logs-dir ## add scalable data nodes: make scale N=2
	$(DC) up -d --no-recreate --scale datanode=$(N) datanode

tail: ## follow every log file (tail -F)
	@shopt -s nullglob; files=("$(LOGS_DIR)"/*/*.txt); \
	if [ $${#files[@]} -eq 0 ]; then echo "no log files under $(LOGS_DIR) yet: run 'make up'" >&2; exit 1; fi; \
	exec tail -n 5 -F "$${files[@]}"

logs: tail ## same as tail

compose-logs: check-compose ## follow the containers' stdout instead
	$(DC) logs -f --tail 20

stack-up: ## Docker Swarm: init a swarm if none, build, deploy docker/stack.yml, wait for the first ack
	docker/stack.sh up

stack-down: ## remove the swarm stack (and the swarm, if stack-up created it); data volumes stay
	docker/stack.sh down

stack-test: ## end-to-end tests on a single-node swarm and on a swarm of 3 engines (root)
	docker/tests/stack-e2e.sh
	docker/tests/swarm-hosts-e2e.sh

e2e: ## end-to-end test (own project; skips when no Docker engine is reachable)
	docker/tests/e2e.sh

bench: ## loopback benchmark side by side with Redis Streams (prints one table)
	bench/run.sh

test: ## every test (the same command as the README's)
	cargo test --workspace

clean-logs: ## delete the log files under the log folder
	find "$(LOGS_DIR)" -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
