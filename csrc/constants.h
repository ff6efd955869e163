// Generated from sdekernels/constants.py by `python -m sdekernels constants`: edit the table there.
// python_tests/test_constants.py fails where this file and the table differ.
#pragma once

namespace sdekernels {

constexpr double kSumFloor = 1e-30;  // sdekernels.constants.HELLINGER_SUM_FLOOR
constexpr double kProbFloor = 1e-12;  // sdekernels.constants.HELLINGER_PROB_FLOOR
constexpr double kHellingerScaleLog2 = 40.0;  // sdekernels.constants.HELLINGER_SCALE_LOG2
constexpr double kPowerFloor = 1e-12;  // sdekernels.constants.PSD_FLOOR
constexpr double kFourierTiny = 1e-30;  // sdekernels.constants.FOURIER_TINY
constexpr double kInvRel = 1e-20;  // sdekernels.constants.INV_REL
constexpr double kLorentzRelFloat = 1.1920928955078125e-07;  // sdekernels.constants.LORENTZ_REL_F32
constexpr double kLorentzRelDouble = 2.220446049250313e-16;  // sdekernels.constants.LORENTZ_REL_F64
constexpr double kAtanTanPi8 = 0.41421356237309503;  // sdekernels.constants.ATAN_TAN_PI_8
constexpr double kAtanC3 = 0.333329491539;  // sdekernels.constants.ATAN_C3
constexpr double kAtanC5 = 0.199777106478;  // sdekernels.constants.ATAN_C5
constexpr double kAtanC7 = 0.138776856032;  // sdekernels.constants.ATAN_C7
constexpr double kAtanC9 = 0.0805374449538;  // sdekernels.constants.ATAN_C9

}  // namespace sdekernels
