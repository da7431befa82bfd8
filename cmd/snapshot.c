/*
 * snapshot.c - `imgtool snapshot`: list, create, apply or delete the
 * internal snapshots of an image, with qemu-img's messages and exit codes
 * (0 success, 1 any failure).  Without an action it lists, as qemu-img.
 *
 * With --external the same actions work on external snapshots, the
 * layers of the image's backing chain (block/extsnap.c): -c freezes the
 * active content under a new file, -a reverts to a layer (discarding
 * the later ones), -d drops a layer keeping every other state.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "imgtool/cmd-usage.h"
#include "imgtool/cmdline.h"
#include "imgtool/imgtool.h"
#include "imgtool/info-print.h"
#include "imgtool/parse-options.h"

static struct {
    int action;             /* 'l', 'a', 'c', 'd' or 0 (list) */
    const char *name;
    const char *file;
    bool external, progress;
} o;

/* -l, -a, -c, -d: one of them, at most. */
static int opt_action(const CmdOpt *opt, const char *arg, void *ctx)
{
    if (o.action) {
        return usage_error("snapshot", "Cannot mix '-l', '-a', '-c', '-d'");
    }
    o.action = opt->short_name;
    o.name = arg;
    return 0;
}

static const CmdOpt snapshot_opts[] = {
    CMDOPT_OBJECT,
    CMDOPT_IMAGE_OPTS,
    { CMDOPT_COMMON, 'U', "force-share", NULL,
      "open the image read-only without conflicting locks (listing only)",
      .common_code = 'U' },
    { CMDOPT_COMMON, 'q', "quiet", NULL, "print nothing but errors",
      .common_code = 'q' },
    { CMDOPT_FN, 'l', NULL, NULL, "list the snapshots (the default)",
      .fn = opt_action },
    { CMDOPT_FN, 'a', NULL, "snapshot",
      "apply (revert to) a snapshot, by id (first) or name",
      .fn = opt_action },
    { CMDOPT_FN, 'c', NULL, "snapshot", "create a snapshot named snapshot",
      .fn = opt_action },
    { CMDOPT_FN, 'd', NULL, "snapshot",
      "delete the snapshot named snapshot (names only)", .fn = opt_action },
    CMDOPT_FORMAT,
    { CMDOPT_FLAG, 0, "external", NULL,
      "work on external snapshots, the layers of the backing chain (see "
      "above)", .value = &o.external },
    { CMDOPT_STRING, 0, "file", "path",
      "with --external -c: the new layer's file", .value = &o.file },
    { CMDOPT_FLAG, 'p', NULL, NULL, "show progress (--external -d)",
      .value = &o.progress },
    { CMDOPT_COMMON, 0, "output", "human|json",
      "output format (--external -l)", .common_code = OPT_COMMON_OUTPUT },
    CMDOPT_END,
};

static const CmdSpec snapshot_spec = {
    .name = "snapshot",
    .args = "filename",
    .description =
        "Lists (-l), creates (-c), applies (-a) or deletes (-d) the internal\n"
        "snapshots of an image, one action at a time.\n"
        "\n"
        "With --external the snapshots are the layers of filename's backing\n"
        "chain; filename (the active image) stays the image the VM uses:\n"
        "  -l       list the layers, newest first (the default)\n"
        "  -c name  freeze the current content as <stem>.name.qcow2 next to\n"
        "           filename (or --file path); filename becomes an empty\n"
        "           overlay on it\n"
        "  -a name  revert: filename becomes an empty overlay on layer 'name'\n"
        "           (a name, file name or path); the layers above it are\n"
        "           deleted\n"
        "  -d name  delete layer 'name', keeping every other state (its data\n"
        "           moves into the layer above)\n",
    .opts = snapshot_opts,
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

static json_t *layer_json(const BlockExtSnapLayer *l)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(l->name));
    json_object_set_new(o, "filename", json_string(l->filename));
    json_object_set_new(o, "format", json_string(l->format));
    json_object_set_new(o, "virtual-size", json_integer((json_int_t)
                                                        l->virtual_size));
    if (l->actual_size >= 0) {
        json_object_set_new(o, "actual-size",
                            json_integer((json_int_t)l->actual_size));
    }
    json_object_set_new(o, "date-sec", json_integer(l->date_sec));
    json_object_set_new(o, "date-nsec", json_integer(l->date_nsec));
    json_object_set_new(o, "active", json_boolean(l->active));
    return o;
}

static void print_layers(const BlockExtSnapList *l, OutputFormat out)
{
    if (out == OUTPUT_JSON) {
        json_t *arr = json_array();
        for (int i = 0; i < l->n; i++) {
            json_array_append_new(arr, layer_json(&l->layers[i]));
        }
        imgtool_print_json(arr);
        json_decref(arr);
        return;
    }
    printf("%-20s %-6s %12s %12s %-19s  %s\n", "NAME", "FORMAT",
           "VIRTUAL SIZE", "DISK SIZE", "DATE", "FILE");
    for (int i = 0; i < l->n; i++) {
        const BlockExtSnapLayer *y = &l->layers[i];
        char vs[32], ds[32] = "-", date[32] = "-", name[64];
        format_size(y->virtual_size, vs, sizeof(vs));
        if (y->actual_size >= 0) {
            format_size((uint64_t)y->actual_size, ds, sizeof(ds));
        }
        time_t t = (time_t)y->date_sec;
        struct tm tm;
        if (localtime_r(&t, &tm)) {
            strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        }
        snprintf(name, sizeof(name), "%s%s", y->name,
                 y->active ? " (active)" : "");
        printf("%-20s %-6s %12s %12s %-19s  %s\n", name, y->format, vs, ds,
               date, y->filename);
    }
}

static void extsnap_progress(void *opaque, uint64_t done, uint64_t total)
{
    progress_update(opaque, done, total);
}

/* --external: the layers of the backing chain. */
static int external_snapshot(int action, const char *name, const char *file,
                             const ImageArgs *a, bool show_progress,
                             const char *filename)
{
    Error err = { 0 };
    int ret = 0;
    const char *what = "";
    switch (action) {
    case 'l': {
        BlockExtSnapList l;
        ret = block_extsnap_list(filename, a->fmt, image_args_flags(a), &l,
                                 &err);
        if (ret < 0) {
            imgtool_report(&err);
            return 1;
        }
        print_layers(&l, a->output);
        if (l.interrupted) {
            imgtool_warn("an interrupted snapshot operation left files "
                         "next to '%s'; the next create, revert or delete "
                         "removes them", filename);
        }
        block_extsnap_list_free(&l);
        return 0;
    }
    case 'c':
        what = "create";
        ret = block_extsnap_create(filename, a->fmt, name, file, &err);
        break;
    case 'a':
        what = "revert to";
        ret = block_extsnap_revert(filename, a->fmt, name, &err);
        break;
    case 'd': {
        what = "delete";
        Progress *p = progress_start(show_progress && !a->quiet);
        ret = block_extsnap_delete(filename, a->fmt, name, extsnap_progress,
                                   p, &err);
        if (ret >= 0) {
            progress_update(p, 1, 1);
        }
        progress_finish(p);
        break;
    }
    }
    if (ret < 0) {
        imgtool_error("Could not %s snapshot '%s': %s", what, name,
                      error_is_set(&err) ? err.msg : strerror(-ret));
        return 1;
    }
    return 0;
}

int cmd_snapshot(int argc, char **argv)
{
    ImageArgs a = { 0 };
    int rc;
    if (cmd_parse(&snapshot_spec, &a, NULL, argc, argv, &rc) < 0) {
        return rc;
    }
    int action = o.action;
    const char *name = o.name, *file = o.file;
    bool external = o.external, show_progress = o.progress;
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
    if (!external && (file || show_progress || a.output == OUTPUT_JSON)) {
        return usage_error("snapshot", "--file, -p and --output need "
                           "--external");
    }
    if (external) {
        if (a.image_opts) {
            return usage_error("snapshot", "--external takes a file name, "
                               "not --image-opts");
        }
        if (file && action != 'c') {
            return usage_error("snapshot", "--file goes with -c");
        }
        if (action != 'l' && a.force_share) {
            imgtool_error("Could not open '%s': force-share=on can only be "
                          "used with read-only images", filename);
            return 1;
        }
        return external_snapshot(action, name, file, &a, show_progress,
                                 filename);
    }
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
    rc = 0;
    int ret = 0;
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
