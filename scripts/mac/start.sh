#!/bin/sh
# Starts the Agent in the background on macOS: the Linux script with the Mac binary.
IPAAS_AGENT_OS_DIR=Mac exec "$(dirname "$0")/../linux/start.sh" "$@"
