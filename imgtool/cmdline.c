/* cmdline.c - parsing the options every image command shares. */
#include "imgtool/cmdline.h"
#include "imgtool/object.h"

int image_args_parse(ImageArgs *a, int c, char *arg)
{
    switch (c) {
    case 'f':
        a->fmt = arg;
        return 1;
    case 'U':
        a->force_share = true;
        return 1;
    case 'q':
        a->quiet = true;
        return 1;
    case OPT_COMMON_IMAGE_OPTS:
        a->image_opts = true;
        return 1;
    case OPT_COMMON_OUTPUT:
        if (imgtool_parse_output(arg, &a->output) < 0) {
            imgtool_error("--output must be used with human or json as "
                          "argument.");
            return -1;
        }
        return 1;
    case OPT_COMMON_OBJECT:
        return imgtool_object_add(arg) < 0 ? -1 : 1;
    default:
        return 0;
    }
}

int image_args_check(const ImageArgs *a)
{
    if (a->image_opts && a->fmt) {
        imgtool_error("--image-opts and --format are mutually exclusive");
        return -1;
    }
    return 0;
}

int image_args_flags(const ImageArgs *a)
{
    return a->force_share ? BLOCK_O_SHARE : 0;
}
