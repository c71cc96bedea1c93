/*
 * format.h - quoting for tmbench's machine-readable outputs (JSON strings, CSV fields), written
 * to stdout.
 */
#ifndef TM_FORMAT_H
#define TM_FORMAT_H

/* "text" with ", \ and control characters escaped; NULL prints "". */
void tm_print_json_string(const char *text);
/* "text" with " doubled (RFC 4180); NULL prints "". */
void tm_print_csv_field(const char *text);

#endif /* TM_FORMAT_H */
