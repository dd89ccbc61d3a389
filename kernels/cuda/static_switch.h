// Compile-time dispatch of runtime flags, as FlashAttention's csrc/flash_attn/src/static_switch.h:
// BOOL_SWITCH(cond, NAME, [&] { ... f<NAME>() ... }) runs the lambda with NAME a constexpr bool
// equal to cond, so each kernel family is written once and instantiated per flag value.
#pragma once

#define BOOL_SWITCH(COND, CONST_NAME, ...)      \
  [&] {                                         \
    if (COND) {                                 \
      constexpr static bool CONST_NAME = true;  \
      return __VA_ARGS__();                     \
    } else {                                    \
      constexpr static bool CONST_NAME = false; \
      return __VA_ARGS__();                     \
    }                                           \
  }()

// The three compile-time switches of every kernel of the family (see common.cuh): LOCAL (a
// window, causal included, is active), GENERAL (ALiBi, softcap, mask or dropout is on) and VARLEN
// (sequences have their own lengths: seqLayout 'padded' or 'packed').
#define OPTIONS_SWITCH(PROBLEM, ...)                                         \
  BOOL_SWITCH(fa::isLocal(PROBLEM), LOCAL, [&] {                             \
    return BOOL_SWITCH(fa::isGeneral(PROBLEM), GENERAL, [&] {                \
      return BOOL_SWITCH(fa::isVarlen(PROBLEM), VARLEN, __VA_ARGS__);        \
    });                                                                      \
  })
