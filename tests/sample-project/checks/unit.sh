#!/bin/sh
# Two checks, reported in JUnit as the suite config promises (out/unit.xml): a check that
# fails is a <failure> there, and the exit status says so too.
set -eu
mkdir -p out
[ "$GREETING" = hello ] && first=ok || first=fail
[ -f data/input.txt ] && second=ok || second=fail
echo "greeting: $first; input: $second"
testcase() {  # name, result
    if [ "$2" = ok ]; then
        echo "  <testcase classname=\"sample\" name=\"$1\"/>"
    else
        echo "  <testcase classname=\"sample\" name=\"$1\"><failure message=\"$1\">got $2</failure></testcase>"
    fi
}
{
    echo '<testsuite name="unit" tests="2">'
    testcase "greeting from the environment" "$first"
    testcase "input file synced" "$second"
    echo '</testsuite>'
} > out/unit.xml
[ "$first$second" = okok ]
