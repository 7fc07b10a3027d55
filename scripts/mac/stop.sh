#!/bin/sh
# Stops the Agent on macOS; the Linux script uses only POSIX sh and ps.
exec "$(dirname "$0")/../linux/stop.sh" "$@"
