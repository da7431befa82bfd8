# bash completion for imgtool.
#
# The candidates come from the binary itself (`imgtool --complete CWORD
# WORDS...`, imgtool/complete.c): commands from its command table, each
# command's options from its option table, option values, formats, -o
# keys, pools and volumes from what the build and the pool store know.
# This file only relays them, so it never needs an edit for a new
# command or option.
_imgtool()
{
    local cur prev words cword
    # '=' and ':' stay inside words: the binary sees --format=qc, vol:p
    _init_completion -n =: || return

    # Listing a network pool's volumes may wait on its server (and on
    # the pool's lock): a Tab never hangs longer than the timeout.
    local line cands=() want_files= want_dirs= nospace=
    while IFS= read -r line; do
        case $line in
            @file) want_files=1 ;;
            @dir) want_dirs=1 ;;
            *) cands+=("$line")
               [[ $line == *[=/:,] ]] && nospace=1 ;;
        esac
    done < <(timeout 5 "${words[0]}" --complete "$cword" "${words[@]}" \
                 2>/dev/null)

    COMPREPLY=("${cands[@]}")
    if [[ $want_files || $want_dirs ]]; then
        # a value written --opt=VALUE: file names complete VALUE
        local cur=$cur
        [[ $cur == --*=* ]] && cur=${cur#*=}
        _filedir ${want_dirs:+-d}
    fi
    # readline replaces only what follows the last '=' or ':' of the
    # word; candidates are whole words, so drop what it keeps.
    if [[ $cur == *[=:]* ]]; then
        local keep=${cur%"${cur##*[=:]}"} i
        for i in "${!COMPREPLY[@]}"; do
            COMPREPLY[i]=${COMPREPLY[i]#"$keep"}
        done
    fi
    [[ $nospace ]] && compopt -o nospace
    return 0
}
complete -F _imgtool imgtool
