/*
 * environment.h - collect the environment of a run into a tm_run_info (see environment.c).
 */
#ifndef TM_ENVIRONMENT_H
#define TM_ENVIRONMENT_H

#include "store.h"

void tm_environment_collect(tm_run_info *info);
void tm_environment_free(tm_run_info *info);

#endif /* TM_ENVIRONMENT_H */
