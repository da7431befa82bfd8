/*
 * info.c - `imgtool info`: what an image is (format, sizes, backing file,
 * format-specific details), as `qemu-img info` prints it.
 *
 * Each layer of --backing-chain is opened on its own without its backing
 * file, so that a missing or broken layer is reported by name and a
 * backing loop is caught instead of followed forever.
 */
#include <stdlib.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/imgtool.h"
#include "imgtool/cmdline.h"
#include "imgtool/info-print.h"
#include "imgtool/parse-options.h"

static bool backing_chain;

static const CmdOpt info_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    CMDOPT_FORMAT,
    CMDOPT_OUTPUT,
    { CMDOPT_FLAG, 0, "backing-chain", NULL,
      "describe every image of the backing chain",
      .value = &backing_chain },
    CMDOPT_FORCE_SHARE,
    CMDOPT_END,
};

static const CmdSpec info_spec = {
    .name = "info",
    .args = "filename",
    .description = "Shows the format, sizes, backing file and format-specific "
                   "details of an image.\n",
    .opts = info_opts,
};

/* Fills chain with one ImageInfo per layer.  Returns 0 or an exit code
 * after reporting the error. */
static int collect_chain(json_t *chain, const char *name, const char *fmt,
                         bool image_opts, bool chain_wanted, int flags)
{
    char *cur = strdup(name);
    char *cur_fmt = fmt ? strdup(fmt) : NULL;
    /* Names can differ for one file ("../dir/a.qcow2", a json: name), so
     * loops are found by the identity of the file each layer opened. */
    char *seen[BLOCK_MAX_CHAIN + 1] = { 0 };
    int nseen = 0;
    int ret = 0;

    while (cur) {
        Error err = { 0 };
        BlockNode *n = imgtool_open(cur, cur_fmt, image_opts, flags, &err);
        if (!n) {
            imgtool_report(&err);
            ret = 1;
            break;
        }
        char *ident = block_chain_identity(block_node_filename(n));
        bool loop = false;
        for (int i = 0; ident && i < nseen; i++) {
            loop = loop || strcmp(seen[i], ident) == 0;
        }
        if (!ident || loop || nseen > BLOCK_MAX_CHAIN) {
            if (!ident) {
                imgtool_error("out of memory");
            } else if (loop) {
                imgtool_error("Backing file '%s' creates an infinite loop.",
                              cur);
            } else {
                imgtool_error("backing chain of '%s' is deeper than %d "
                              "images", name, BLOCK_MAX_CHAIN);
            }
            free(ident);
            block_close(n);
            ret = 1;
            break;
        }
        seen[nseen++] = ident;
        json_t *info = info_build(n);
        json_array_append_new(chain, info);

        free(cur);
        free(cur_fmt);
        cur = NULL;
        cur_fmt = NULL;
        image_opts = false;
        const char *next = json_string_value(
            json_object_get(info, "full-backing-filename"));
        const char *next_fmt = json_string_value(
            json_object_get(info, "backing-filename-format"));
        if (chain_wanted && next) {
            cur = strdup(next);
            cur_fmt = next_fmt ? strdup(next_fmt) : NULL;
        }
        block_close(n);
    }
    for (int i = 0; i < nseen; i++) {
        free(seen[i]);
    }
    free(cur);
    free(cur_fmt);
    return ret;
}

int cmd_info(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&info_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    bool chain = backing_chain;
    if (argc - optind != 1) {
        return usage_error("info", "Expecting one image file name");
    }
    if (image_args_check(&a) < 0) {
        return 1;
    }

    int flags = BLOCK_O_NO_BACKING | image_args_flags(&a);
    json_t *list = json_array();
    int ret = collect_chain(list, argv[optind], a.fmt, a.image_opts, chain,
                            flags);
    if (ret == 0) {
        if (a.output == OUTPUT_JSON) {
            imgtool_print_json(chain ? list : json_array_get(list, 0));
        } else {
            size_t i;
            json_t *v;
            json_array_foreach(list, i, v) {
                if (i > 0) {
                    putchar('\n');
                }
                info_print_human(stdout, v);
            }
        }
    }
    json_decref(list);
    return ret;
}
