#!/bin/sh
exec </dev/null >/dev/null 2>&1
while :; do sleep 3600; done
