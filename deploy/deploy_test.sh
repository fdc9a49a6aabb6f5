#!/bin/bash
exec /usr/bin/python3 "$TEST_SRCDIR/$TEST_WORKSPACE/deploy/deploy_test.py"
