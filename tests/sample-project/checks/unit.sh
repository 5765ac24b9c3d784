#!/bin/sh
# Two passing checks, reported in JUnit as the suite config promises (out/unit.xml).
set -eu
mkdir -p out
[ "$GREETING" = hello ] && first=ok || first=fail
[ -f data/input.txt ] && second=ok || second=fail
echo "greeting: $first; input: $second"
cat > out/unit.xml <<XML
<testsuite name="unit" tests="2">
  <testcase classname="sample" name="greeting from the environment"/>
  <testcase classname="sample" name="input file synced"/>
</testsuite>
XML
[ "$first$second" = okok ]
