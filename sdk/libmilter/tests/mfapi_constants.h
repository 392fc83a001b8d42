/*
 * mfapi_constants.h - every constant of libmilter's mfapi.h and mfdef.h, as an X-macro
 * list, for test_mfapi_constants.c. test_mfapi_names.sh checks that the list names every
 * constant Debian's headers define.
 * SPDX-License-Identifier: Apache-2.0
 */
#define MFAPI_CONSTANTS(X)                                                                     \
    X(SMFI_VERSION) X(MI_SUCCESS) X(MI_FAILURE)                                                \
    X(SMFIF_NONE) X(SMFIF_ADDHDRS) X(SMFIF_CHGBODY) X(SMFIF_MODBODY) X(SMFIF_ADDRCPT)          \
    X(SMFIF_DELRCPT) X(SMFIF_CHGHDRS) X(SMFIF_QUARANTINE) X(SMFIF_CHGFROM)                     \
    X(SMFIF_ADDRCPT_PAR) X(SMFIF_SETSYMLIST)                                                   \
    X(SMFIM_NOMACROS) X(SMFIM_FIRST) X(SMFIM_CONNECT) X(SMFIM_HELO) X(SMFIM_ENVFROM)           \
    X(SMFIM_ENVRCPT) X(SMFIM_DATA) X(SMFIM_EOM) X(SMFIM_EOH) X(SMFIM_LAST)                     \
    X(SMFIS_CONTINUE) X(SMFIS_REJECT) X(SMFIS_DISCARD) X(SMFIS_ACCEPT) X(SMFIS_TEMPFAIL)       \
    X(SMFIS_NOREPLY) X(SMFIS_SKIP) X(SMFIS_ALL_OPTS)                                           \
    X(SMFI_PROT_VERSION) X(MILTER_LEN_BYTES) X(MILTER_OPTLEN) X(MILTER_CHUNK_SIZE)             \
    X(MILTER_MAX_DATA_SIZE) X(SMFI_V1_ACTS) X(SMFI_V2_ACTS) X(SMFI_CURR_ACTS)                  \
    X(SMFIA_UNKNOWN) X(SMFIA_UNIX) X(SMFIA_INET) X(SMFIA_INET6)                                \
    X(SMFIC_ABORT) X(SMFIC_BODY) X(SMFIC_CONNECT) X(SMFIC_MACRO) X(SMFIC_BODYEOB)              \
    X(SMFIC_HELO) X(SMFIC_QUIT_NC) X(SMFIC_HEADER) X(SMFIC_MAIL) X(SMFIC_EOH) X(SMFIC_OPTNEG)  \
    X(SMFIC_QUIT) X(SMFIC_RCPT) X(SMFIC_DATA) X(SMFIC_UNKNOWN)                                 \
    X(SMFIR_ADDRCPT) X(SMFIR_DELRCPT) X(SMFIR_ADDRCPT_PAR) X(SMFIR_SHUTDOWN) X(SMFIR_ACCEPT)   \
    X(SMFIR_REPLBODY) X(SMFIR_CONTINUE) X(SMFIR_DISCARD) X(SMFIR_CHGFROM) X(SMFIR_CONN_FAIL)   \
    X(SMFIR_ADDHEADER) X(SMFIR_INSHEADER) X(SMFIR_SETSYMLIST) X(SMFIR_CHGHEADER)               \
    X(SMFIR_PROGRESS) X(SMFIR_QUARANTINE) X(SMFIR_REJECT) X(SMFIR_SKIP) X(SMFIR_TEMPFAIL)      \
    X(SMFIR_REPLYCODE)                                                                         \
    X(SMFIP_NOCONNECT) X(SMFIP_NOHELO) X(SMFIP_NOMAIL) X(SMFIP_NORCPT) X(SMFIP_NOBODY)         \
    X(SMFIP_NOHDRS) X(SMFIP_NOEOH) X(SMFIP_NR_HDR) X(SMFIP_NOHREPL) X(SMFIP_NOUNKNOWN)         \
    X(SMFIP_NODATA) X(SMFIP_SKIP) X(SMFIP_RCPT_REJ) X(SMFIP_NR_CONN) X(SMFIP_NR_HELO)          \
    X(SMFIP_NR_MAIL) X(SMFIP_NR_RCPT) X(SMFIP_NR_DATA) X(SMFIP_NR_UNKN) X(SMFIP_NR_EOH)        \
    X(SMFIP_NR_BODY) X(SMFIP_HDR_LEADSPC) X(SMFIP_MDS_256K) X(SMFIP_MDS_1M)                    \
    X(SMFI_V1_PROT) X(SMFI_V2_PROT) X(SMFI_CURR_PROT) X(SMFI_INTERNAL)                         \
    X(SM_LM_VRS_MAJOR(SMFI_VERSION)) X(SM_LM_VRS_MINOR(SMFI_VERSION))                          \
    X(SM_LM_VRS_PLVL(SMFI_VERSION))

/* The _FFR_MDS_NEGOTIATE variants, checked with it defined to 1 in both. */
#define MFAPI_CONSTANTS_MDS(X)                                                                 \
    X(SMFI_VERSION) X(SMFI_VERSION_MDS) X(MILTER_MDS_64K) X(MILTER_MDS_256K) X(MILTER_MDS_1M)

struct mfapi_constant {
    const char *name;
    long long value;
};
