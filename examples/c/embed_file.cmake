# Writes the bytes of IN as a C array named NAME into OUT (cmake -DIN= -DOUT= -DNAME= -P).
# SPDX-License-Identifier: Apache-2.0
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR size "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* Generated from ${IN} by embed_file.cmake. */\n#include <stddef.h>\n"
     "const unsigned char ${NAME}[] = {\n${body}0};\nconst size_t ${NAME}_len = ${size};\n")
