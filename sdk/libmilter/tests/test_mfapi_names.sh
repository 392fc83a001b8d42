#!/bin/sh
# Every constant Debian's libmilter headers define is in mfapi_constants.h (so that
# test_mfapi_constants compares them all), and our header defines it too.
# SPDX-License-Identifier: Apache-2.0
# Usage: test_mfapi_names.sh CC OUR_INCLUDE_DIR LIST_FILE
set -eu
cc=$1 ours=$2 list=$3
names() { # $1: extra cpp flags
    printf '#define _FFR_MDS_NEGOTIATE 1\n#include <libmilter/mfapi.h>\n' |
        "$cc" ${1:+"$1"} -dM -E -x c - | sed -n 's/^#define \(\(SMF\|MI_\|MILTER_\|SM_LM_\)[A-Za-z0-9_]*\).*/\1/p' | sort -u
}
real=$(names "")
mine=$(names "-I$ours")
status=0
for n in $real; do
    case $n in SM_LM_VRS_*) continue ;; esac # function-like: compared applied to the version
    grep -q "X($n)" "$list" || { echo "not compared: $n"; status=1; }
    echo "$mine" | grep -qx "$n" || { echo "missing in our header: $n"; status=1; }
done
[ $status = 0 ] && echo "all $(echo "$real" | wc -l) libmilter constants compared"
exit $status
