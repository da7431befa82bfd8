/* output.c - --output=human|json and printing JSON as qemu-img does. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "imgtool/imgtool.h"

int imgtool_parse_output(const char *s, OutputFormat *out)
{
    if (strcmp(s, "human") == 0) {
        *out = OUTPUT_HUMAN;
    } else if (strcmp(s, "json") == 0) {
        *out = OUTPUT_JSON;
    } else {
        return -EINVAL;
    }
    return 0;
}

void imgtool_print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(4) | JSON_PRESERVE_ORDER |
                            JSON_ENCODE_ANY);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    }
}
