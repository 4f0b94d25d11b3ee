// src/auth/jwt.ts: part of the auth-refactor example repository (generated filler).

export function jwt_auth_0(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_1(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_2(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_3(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_4(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_5(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_6(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_7(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_8(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_9(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_10(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_11(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_12(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_13(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_14(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_15(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_16(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_17(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_18(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_19(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_20(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_21(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_22(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_23(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_24(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_25(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_26(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_27(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_28(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_29(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_30(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_31(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_32(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_33(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_34(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_35(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_36(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_37(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_38(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_39(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_40(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_41(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_42(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_43(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_44(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_45(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_46(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_47(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_48(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_49(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_50(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_51(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_52(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_53(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_54(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_55(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_56(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_57(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_58(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_59(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_60(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_61(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_62(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_63(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_64(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_65(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_66(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_67(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_68(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_69(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_70(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_71(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_72(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_73(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_74(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_75(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_76(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_77(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_78(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_79(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_80(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_81(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_82(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_83(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_84(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_85(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_86(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_87(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_88(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_89(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_90(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_91(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_92(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_93(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_94(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_95(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_96(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_97(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_98(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_99(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_100(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_101(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_102(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_103(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_104(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_105(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_106(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_107(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_108(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_109(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_110(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_111(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_112(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_113(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_114(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_115(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_116(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_117(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_118(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_119(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_120(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_121(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_122(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_123(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_124(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_125(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_126(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_127(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_128(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_129(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_130(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_131(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_132(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_133(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_134(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_135(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_136(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_137(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_138(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_139(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_140(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_141(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_142(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_143(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_144(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_145(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_146(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_147(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_148(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_149(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_150(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_151(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_152(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_153(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_154(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_155(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_156(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_157(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_158(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_159(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_160(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_161(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_162(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_163(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_164(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_165(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_166(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_167(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_168(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_169(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_170(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_171(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_172(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_173(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_174(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_175(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_176(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_177(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_178(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_179(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_180(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_181(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_182(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_183(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_184(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_185(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_186(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_187(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_188(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_189(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_190(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_191(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_192(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_193(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_194(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_195(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_196(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_197(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_198(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_199(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_200(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_201(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_202(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_203(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_204(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_205(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_206(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_207(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_208(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_209(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_210(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_211(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_212(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_213(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_214(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_215(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_216(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_217(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_218(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_219(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_220(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_221(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_222(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_223(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_224(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_225(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_226(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_227(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_228(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_229(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_230(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_231(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_232(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_233(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_234(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_235(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_236(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_237(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_238(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_239(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_240(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_241(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_242(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_243(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_244(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_245(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_246(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_247(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_248(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_249(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_250(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_251(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_252(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_253(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_254(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_255(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_256(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_257(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_258(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_259(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_260(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_261(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_262(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_263(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_264(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_265(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_266(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_267(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_268(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_269(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_270(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_271(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_272(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_273(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_274(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_275(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_276(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_277(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_278(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_279(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_280(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_281(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_282(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_283(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_284(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_285(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_286(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_287(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_288(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_289(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_290(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_291(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function jwt_auth_292(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function jwt_auth_293(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function jwt_auth_294(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function jwt_auth_295(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function jwt_auth_296(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function jwt_auth_297(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function jwt_auth_298(input: Record<st
