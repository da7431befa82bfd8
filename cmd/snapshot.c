/*
 * snapshot.c - `imgtool snapshot`: list, create, apply or delete the
 * internal snapshots of an image, with qemu-img's messages and exit codes
 * (0 success, 1 any failure).  Without an action it lists, as qemu-img.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"
#include "imgtool/info-print.h"

static const char snapshot_usage[] =
    "usage: imgtool snapshot [--object objectdef] [--image-opts] [-U] [-q]\n"
    "                        [-l | -a snapshot | -c snapshot | -d snapshot]\n"
    "                        [-f fmt] filename\n"
    "\n"
    "  -l                list all snapshots (the default)\n"
    "  -a snapshot       apply (revert to) a snapshot, by id or name\n"
    "  -c snapshot       create a snapshot named 'snapshot'\n"
    "  -d snapshot       delete a snapshot, by id or name\n"
    "  -f fmt            image format (probed when omitted)\n"
    "  -U, --force-share open the image read-only without conflicting locks\n"
    "                    (listing only)\n"
    "  -q, --quiet       print nothing but errors\n"
    "  --image-opts      filename is an option string (driver=...,...)\n";

static const struct option snapshot_options[] = {
    { "help", no_argument, NULL, 'h' },
    { "quiet", no_argument, NULL, 'q' },
    IMAGE_ARGS_LONG_OPTIONS,
    FORCE_SHARE_LONG_OPTION,
    { NULL, 0, NULL, 0 },
};

static int list_snapshots(BlockNode *n)
{
    json_t *list = info_snapshots(n);
    if (list) {
        info_print_snapshots(stdout, list);
        json_decref(list);
    }
    return 0;
}

int cmd_snapshot(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int action = 0, c, r;
    const char *name = NULL;

    optind = 0;
    while ((c = getopt_long(argc, argv, ":hla:c:d:f:Uq", snapshot_options,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(snapshot_usage, stdout);
            return 0;
        case 'l':
        case 'a':
        case 'c':
        case 'd':
            if (action) {
                return usage_error("snapshot",
                                   "Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = c;
            name = c == 'l' ? NULL : optarg;
            break;
        default:
            r = image_args_option(&a, c, optarg, "snapshot", argv);
            if (r) {
                return r;
            }
        }
    }
    if (argc - optind != 1) {
        return usage_error("snapshot", "Expecting one image file name");
    }
    if (image_args_check(&a) < 0) {
        return 1;
    }
    if (!action) {
        action = 'l';
    }
    const char *filename = argv[optind];
    bool writing = action != 'l';
    if (writing && a.force_share) {
        imgtool_error("Could not open '%s': force-share=on can only be used "
                      "with read-only images", filename);
        return 1;
    }
    int flags = image_args_flags(&a) | (writing ? BLOCK_O_RDWR : 0);
    /* Snapshots live in the top image alone. */
    flags |= BLOCK_O_NO_BACKING;

    Error err = { 0 };
    BlockNode *n = imgtool_open(filename, a.fmt, a.image_opts, flags, &err);
    if (!n) {
        imgtool_report(&err);
        return 1;
    }
    int rc = 0, ret = 0;
    const char *what = NULL;
    switch (action) {
    case 'l':
        rc = list_snapshots(n);
        break;
    case 'c':
        what = "create";
        ret = block_snapshot_create(n, name, &err);
        break;
    case 'a':
        what = "apply";
        ret = block_snapshot_apply(n, name, &err);
        break;
    case 'd':
        what = "delete";
        ret = block_snapshot_delete(n, name, &err);
        if (ret == -ENOTSUP) {
            /* qemu-img looks the name up before asking the driver. */
            error_clear(&err);
            error_setf(&err, ENOENT, "snapshot not found");
        }
        break;
    }
    if (ret < 0) {
        if (action == 'c' && ret != -EEXIST) {
            /* qemu-img prints the errno alone for any create failure. */
            imgtool_error("Could not create snapshot '%s': %d (%s)", name,
                          ret, strerror(-ret));
        } else {
            imgtool_error("Could not %s snapshot '%s': %s", what, name,
                          error_is_set(&err) ? err.msg : strerror(-ret));
        }
        rc = 1;
    }
    if (writing) {
        int fr = block_flush(n);
        if (fr < 0 && !rc) {
            imgtool_error("Could not %s snapshot '%s': %s", what, name,
                          strerror(-fr));
            rc = 1;
        }
    }
    block_close(n);
    return rc;
}
