// src/lib/util09.ts: part of the auth-refactor example repository (generated filler).

export function util09_util_0(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_1(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_2(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_3(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_4(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_5(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_6(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_7(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_8(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_9(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_10(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_11(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_12(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_13(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_14(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_15(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_16(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_17(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_18(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_19(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_20(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_21(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_22(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_23(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_24(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_25(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_26(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_27(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_28(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_29(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_30(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_31(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_32(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_33(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_34(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_35(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_36(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_37(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_38(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_39(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_40(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_41(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_42(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_43(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_44(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_45(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_46(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_47(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_48(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_49(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_50(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_51(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_52(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_53(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_54(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_55(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_56(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_57(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_58(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_59(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_60(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_61(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_62(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_63(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_64(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_65(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_66(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_67(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_68(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_69(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function util09_util_70(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function util09_util_71(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function util09_util_72(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function util09_util_73(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function util09_util_74(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function util09_util_75(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function util09_util_76(in
