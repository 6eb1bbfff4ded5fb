// The parameters of sim/ddr_model.v and their defaults, declared once: `include'd into the
// parameter list of ddr_model and of every bench around it (accel_tb.v, ddr_calib_tb.v), which
// pass them on with ddr_model_param_map.vh. What each means: ddr_model.v's header; the
// board-model ones at their defaults give the ideal memory.
    parameter integer PORTS = 1,
    parameter integer DATA_BYTES = 8,
    parameter integer ADDR_W = 32,
    parameter integer SIZE_BYTES = 16777216,
    parameter integer BASE_PAGE = 0,
    parameter integer BW_NUM = 8,
    parameter integer BW_DEN = 1,
    parameter integer LATENCY = 24,
    parameter integer QUEUE = 16,
    parameter integer REFI = 0,
    parameter integer RFC = 0,
    parameter integer BANKS = 1,
    parameter integer BANK_SHIFT = 12,
    parameter integer ROW_SHIFT = 31,
    parameter integer MISS = 0,
    parameter integer TURN = 0,
    parameter integer GROUP_QUEUE = 64,
    parameter integer PORT_GROUP = 0,
    parameter integer JITTER = 0,
    parameter integer CPU_NUM = 0
