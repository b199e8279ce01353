#!/bin/bash
# gotest.sh DIR [ARGS...] - run the Go test binaries that tests.sh compiled
# into DIR (DIR/list: "importpath dir binary" per line), each in its
# package's source directory as `go test` would, with -test.v and ARGS.
# Prints each test with its time, one "ok"/"FAIL" line per package and a
# closing "tests: N passed, N failed, N skipped" line. Exits 1 if a test
# failed, a binary failed, or with CI=true if a test was skipped or the
# end-to-end package was run and none of its tests passed.
# Used on the host and inside the test VM alike. A package other than
# test/e2e gets -test.timeout $ARH_TEST_UNIT_TIMEOUT (default 10m) after ARGS.
set -uo pipefail
DIR=${1:?usage: gotest.sh DIR [ARGS...]}
shift
[ -s "$DIR/list" ] || { echo "gotest: no test binaries listed in $DIR/list (is $DIR visible here?)"; exit 1; }
rc=0
: >"$DIR/results"
while read -r pkg dir bin; do
	[ -x "$DIR/$bin" ] || { echo "gotest: $DIR/$bin is missing"; rc=1; continue; }
	start=$(date +%s%N)
	# Every package but the end-to-end one ends in minutes: a stall there
	# fails it (with Go's dump of every goroutine) long before the
	# run-wide timeout, instead of taking the whole CI budget with it.
	limit=()
	case $pkg in */test/e2e) ;; *) limit=(-test.timeout "${ARH_TEST_UNIT_TIMEOUT:-10m}") ;; esac
	(cd "$dir" && "$DIR/$bin" -test.v -test.count=1 "$@" "${limit[@]}" 2>&1) | tee "$DIR/$bin.log"
	prc=${PIPESTATUS[0]}
	secs=$(awk -v ns=$(($(date +%s%N) - start)) 'BEGIN{printf "%.1f", ns/1e9}')
	# Top-level results only: subtests are indented.
	awk -v pkg="$pkg" '/^--- (PASS|FAIL|SKIP): /{print pkg, $2, $3}' "$DIR/$bin.log" >>"$DIR/results"
	if [ "$prc" = 0 ]; then
		printf 'ok  \t%s\t%ss\n' "$pkg" "$secs"
	else
		printf 'FAIL\t%s\t%ss (exit %s)\n' "$pkg" "$secs" "$prc"
		rc=1
	fi
done <"$DIR/list"
passed=$(grep -c ' PASS: ' "$DIR/results")
failed=$(grep -c ' FAIL: ' "$DIR/results")
skipped=$(grep -c ' SKIP: ' "$DIR/results")
if [ "$skipped" -gt 0 ]; then
	echo "skipped tests:"
	awk '$2 == "SKIP:" {print "  " $1 " " $3}' "$DIR/results"
	if [ "${CI:-}" = true ]; then
		echo "gotest: with CI=true a skipped test is a failure"
		rc=1
	fi
fi
# Under CI a run of the end-to-end package must have restored something.
if [ "${CI:-}" = true ] && grep -q '/test/e2e ' "$DIR/list" && ! grep -q '/test/e2e PASS: ' "$DIR/results"; then
	echo "gotest: CI=true and no end-to-end test passed: no real restore was tested"
	rc=1
fi
echo
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit $rc
