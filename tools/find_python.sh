#!/bin/sh
# The first of the interpreters named (commands on PATH) that is Python 3.11 or newer,
# for the Makefile: prints "found NAME", else "none (NAME is VERSION, ...)" naming those
# found too old, or "none (not on PATH)". Reads each one's --version only: nothing is installed or downloaded.
seen=
for candidate in "$@"; do
  command -v "$candidate" >/dev/null 2>&1 || continue
  # "Python 3.12.3" (Python 2 says it on stderr)
  set -- $("$candidate" --version 2>&1)
  version=${2:-unknown}
  major=${version%%.*}
  rest=${version#*.}
  minor=${rest%%.*}
  case "$major.$minor" in
    *[!0-9.]* | .* | *.) seen="$seen, $candidate is $version"; continue ;;
  esac
  if [ "$major" -gt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -ge 11 ]; }; then
    echo "found $candidate"
    exit 0
  fi
  seen="$seen, $candidate is $version"
done
if [ -n "$seen" ]; then echo "none (${seen#, })"; else echo "none (not on PATH)"; fi
