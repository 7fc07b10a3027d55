#!/bin/sh
# Stops the Agent on macOS; the same as scripts/mac/stop.sh, kept at this path as well.
exec "$(dirname "$0")/mac/stop.sh" "$@"
