#!/bin/sh
# A suite that fails the way real ones do: a message, then a non-zero exit.
echo "expected 4, got 5" >&2
exit 3
