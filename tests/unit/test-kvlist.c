/* test-kvlist.c - option-list and size parsing (TAP). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "block/block.h"

static int n_test;
static int failed;

static void ok(int cond, const char *what)
{
    n_test++;
    if (!cond) {
        failed++;
    }
    printf("%sok %d - %s\n", cond ? "" : "not ", n_test, what);
}

int main(void)
{
    KVList l = { 0 };
    Error err = { 0 };
    ok(kvlist_parse(&l, "a=1,b=x,,y,c=", NULL, &err) == 0, "parse list");
    ok(l.n == 3, "three pairs");
    ok(strcmp(kvlist_get(&l, "b"), "x,y") == 0, "escaped comma");
    ok(strcmp(kvlist_get(&l, "c"), "") == 0, "empty value");
    ok(kvlist_check_unused(&l, NULL, &err) < 0 && strstr(err.msg, "'a'"),
       "unused key reported");
    kvlist_free(&l);

    error_clear(&err);
    ok(kvlist_parse(&l, "qcow2,x=1", "driver", &err) == 0 &&
       strcmp(kvlist_get(&l, "driver"), "qcow2") == 0, "implied key");
    kvlist_free(&l);
    ok(kvlist_parse(&l, "a=1,junk", NULL, &err) < 0, "bare word refused");
    kvlist_free(&l);

    uint64_t v;
    ok(parse_size("64k", &v) == 0 && v == 65536, "64k");
    ok(parse_size("1.5G", &v) == 0 && v == 1610612736ULL, "1.5G");
    ok(parse_size("512", &v) == 0 && v == 512, "plain bytes");
    ok(parse_size("16E", &v) == -ERANGE, "overflow");
    ok(parse_size("12x", &v) == -EINVAL, "bad suffix");
    ok(parse_size("-1", &v) == -EINVAL, "negative");
    ok(parse_size(" 1M", &v) == 0 && v == 1048576, "leading blank");
    ok(parse_size("0x100000", &v) == 0 && v == 1048576, "hex");
    ok(parse_size("0X1M", &v) == 0 && v == 1048576, "hex with suffix");
    ok(parse_size("0x1.8M", &v) == -EINVAL, "hex fraction");
    ok(parse_size("0x", &v) == -EINVAL, "hex without digits");
    ok(parse_size(" -1", &v) == -EINVAL, "blank then negative");
    ok(parse_size("x1", &v) == -EINVAL, "no digits");

    char buf[32];
    format_size(1000448, buf, sizeof(buf));
    ok(strcmp(buf, "977 KiB") == 0, "977 KiB");
    format_size(1536, buf, sizeof(buf));
    ok(strcmp(buf, "1.5 KiB") == 0, "1.5 KiB");
    format_size(512, buf, sizeof(buf));
    ok(strcmp(buf, "512 B") == 0, "512 B");
    format_size(1099511627776ULL, buf, sizeof(buf));
    ok(strcmp(buf, "1 TiB") == 0, "1 TiB");

    printf("1..%d\n", n_test);
    return failed ? 1 : 0;
}
