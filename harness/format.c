/*
 * format.c - see format.h.
 */
#include "format.h"

#include <stdio.h>

void tm_print_json_string(const char *text) {
    putchar('"');
    for (; text && *text; text++) {
        if (*text == '"' || *text == '\\') printf("\\%c", *text);
        else if ((unsigned char)*text < 0x20) printf("\\u%04x", *text);
        else putchar(*text);
    }
    putchar('"');
}

void tm_print_csv_field(const char *text) {
    putchar('"');
    for (; text && *text; text++) {
        if (*text == '"') putchar('"');
        putchar(*text);
    }
    putchar('"');
}
