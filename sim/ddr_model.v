// ddr_model: a behavioural DDR memory behind AXI4 for Verilator (a test model, not gateware).
//
// PORTS read-only AXI4 slave ports (AR/R) and one write port (AW/W/B), all
// on one byte array of SIZE_BYTES that sits at bus address BASE_PAGE * 4096
// (the Zynq UltraScale+ maps its upper DDR at 0x8_0000_0000, above 32-bit
// addresses; the host side and err_lo/err_hi use offsets into the array). Python never touches a beat: the host
// side loads and dumps memory through files (below), so a bench runs as fast
// as the compiled model.
//
// Bandwidth: a token bucket shared by every port, read and write. Each cycle
// adds BW_NUM / BW_DEN bytes of credit (capped at PORTS + 1 beats, so an
// idle memory cannot later burst above the rate for more than a beat or
// two); a beat (DATA_BYTES) is sent, or accepted, only against a beat of
// credit. Ports are served round robin (priority passes to the port after
// the last one served), each at most one beat per cycle.
// Over a long transfer the delivered bytes per cycle equal
// min(BW_NUM / BW_DEN, PORTS * DATA_BYTES).
//
// Board model (every parameter below at 0 gives the ideal memory above; contract/memory.py
// derives them from a board's documents, docs/memory.md cites each):
//   Refresh: every REFI cycles the memory is unavailable for RFC cycles and every row closes.
//   Rows: a beat's bank is (addr >> BANK_SHIFT) % BANKS and its row addr >> ROW_SHIFT. A beat
//     to a row that is not open in its bank waits MISS cycles (precharge + activate) while the
//     bus serves other ports. A burst accepted while its bank is not streaming another row
//     opens its row at once (the controller's look-ahead), so a sequential stream whose rows
//     rotate over the banks hides its activations inside the read latency.
//   Turnaround: every write burst costs TURN cycles of bus time (read-to-write plus
//     write-to-read; the controller drains a burst's writes as one group).
//   Acceptance: each port holds at most QUEUE bursts accepted and not finished; ports sharing
//     a controller port (PORT_GROUP, 2 bits per port) hold at most GROUP_QUEUE together.
//   Latency distribution: a burst's first beat comes LATENCY + (LFSR % (JITTER + 1)) cycles
//     after its AR handshake (bursts of a port still complete in order).
//   Processor traffic: CPU_NUM / BW_DEN bytes per cycle of 64-byte accesses at random rows,
//     which take bus time and close the rows they hit.
//
// Latency: a read burst's first beat is presented LATENCY cycles after its
// AR handshake (later if the port is still sending an earlier burst or
// credit is short). Up to QUEUE bursts are accepted ahead per port. Write
// responses follow the last beat of a burst after one cycle.
//
// Responses: OKAY; SLVERR for a beat touching the byte window
// [err_lo, err_hi) (set both to 0 for none); DECERR below BASE or beyond
// BASE + SIZE_BYTES (read data 0, writes dropped).
//
// Protocol checks: protocol_error goes (and stays) high on a burst that is
// not INCR, has AxSIZE other than log2(DATA_BYTES), an address not aligned
// to DATA_BYTES, or crosses a 4 KiB boundary, or on WLAST on the wrong beat.
//
// Host access (one operation per pulse, sampled at a rising edge; result in
// host_status one cycle later, with a one-cycle host_ack):
//   host_load: read host_len bytes of the file into memory at host_addr
//   host_dump: write host_len bytes of memory from host_addr to the file
//   The file is the plusarg +ddr_file=<path>, default "ddr_host.bin" in the
//   simulator's working directory. host_status: 0 done, 1 file could not be
//   opened, 2 range outside the memory, 3 the file was shorter than host_len.
//   Loading uses $fread (byte array, so the file's byte order is kept);
//   measured a few milliseconds per megabyte.
//
// Statistics (reset by rst): stat_read_bytes / stat_write_bytes (bytes of
// R / W handshakes), stat_first_read / stat_last_read (cycle numbers of the
// first and latest R handshake), stat_cycles (cycles since reset).
module ddr_model #(
`include "ddr_model_params.vh"
) (
    input  wire                          clk,
    input  wire                          rst,
    // read ports, packed: port p's signal at [p*WIDTH +: WIDTH]
    input  wire [PORTS*ADDR_W-1:0]       rd_araddr,
    input  wire [PORTS*8-1:0]            rd_arlen,
    input  wire [PORTS*3-1:0]            rd_arsize,
    input  wire [PORTS*2-1:0]            rd_arburst,
    input  wire [PORTS-1:0]              rd_arvalid,
    output wire [PORTS-1:0]              rd_arready,
    output reg  [PORTS*DATA_BYTES*8-1:0] rd_rdata,
    output reg  [PORTS*2-1:0]            rd_rresp,
    output reg  [PORTS-1:0]              rd_rlast,
    output reg  [PORTS-1:0]              rd_rvalid,
    input  wire [PORTS-1:0]              rd_rready,
    // write port
    input  wire [ADDR_W-1:0]             wr_awaddr,
    input  wire [7:0]                    wr_awlen,
    input  wire [2:0]                    wr_awsize,
    input  wire [1:0]                    wr_awburst,
    input  wire                          wr_awvalid,
    output wire                          wr_awready,
    input  wire [DATA_BYTES*8-1:0]       wr_wdata,
    input  wire [DATA_BYTES-1:0]         wr_wstrb,
    input  wire                          wr_wlast,
    input  wire                          wr_wvalid,
    output reg                           wr_wready,
    output reg  [1:0]                    wr_bresp,
    output reg                           wr_bvalid,
    input  wire                          wr_bready,
    // host access
    input  wire                          host_load,
    input  wire                          host_dump,
    input  wire [31:0]                   host_addr,
    input  wire [31:0]                   host_len,
    output reg                           host_ack,
    output reg  [1:0]                    host_status,
    input  wire [ADDR_W-1:0]             err_lo,
    input  wire [ADDR_W-1:0]             err_hi,
    // statistics
    output reg  [63:0]                   stat_read_bytes,
    output reg  [63:0]                   stat_write_bytes,
    output reg  [63:0]                   stat_first_read,
    output reg  [63:0]                   stat_last_read,
    output reg  [63:0]                   stat_cycles,
    output reg  [63:0]                   stat_row_misses,
    output reg  [63:0]                   stat_refreshes,
    output reg  [63:0]                   stat_bursts,        // read bursts started (first beat sent)
    output reg  [63:0]                   stat_latency_sum,   // their AR-to-first-beat cycles: sum,
    output reg  [31:0]                   stat_latency_min,   //   least
    output reg  [31:0]                   stat_latency_max,   //   and most
    output reg                           protocol_error
);
    localparam integer SIZE_LOG2 = $clog2(DATA_BYTES);
    // Where the array sits on the bus; a burst address is made an offset into it on acceptance (one
    // below BASE wraps far beyond SIZE_BYTES, so it answers DECERR).
    localparam [ADDR_W-1:0] BASE = {{ADDR_W{1'b0}}, BASE_PAGE[31:0]} << 12;
    localparam integer BEAT = DATA_BYTES * BW_DEN;             // credit of one beat
    localparam integer CAP = (PORTS + 1) * DATA_BYTES * BW_DEN;
    localparam integer QBITS = $clog2(QUEUE) + 1;
    localparam integer CPU_LINE = 64 * BW_DEN;              // credit of one processor access
    localparam integer ROWS = MISS > 0;                     // model rows and banks at all

    // open row of every bank, when it can serve (activate done), who opened it, and whether a
    // beat has used it since (a row opened for a port is not taken from it before it is used)
    reg [ADDR_W-1:0] open_row   [0:BANKS-1];
    reg              open_ok    [0:BANKS-1];
    reg [63:0]       bank_ready [0:BANKS-1];
    reg [7:0]        bank_owner [0:BANKS-1];
    reg              bank_used  [0:BANKS-1];
    reg [63:0]       misses, bursts, lat_sum, lat;
    reg [31:0]       lat_min, lat_max;
    reg [63:0]       bus_free;                              // refresh: no beat before this cycle
    integer          refresh_timer, cpu_acc, bk, q2;
    reg [ADDR_W-1:0] rw;
    reg              ok, busy, accept;
    reg [31:0]       lfsr;
    reg [PORTS-1:0]  ar_ok;

    reg [7:0] mem [0:SIZE_BYTES-1];

    // per-port queue of accepted read bursts (ring buffers, flattened over ports)
    reg [ADDR_W-1:0] arq_addr [0:PORTS*QUEUE-1];
    reg [7:0]        arq_len  [0:PORTS*QUEUE-1];
    reg [63:0]       arq_due  [0:PORTS*QUEUE-1];
    reg [63:0]       arq_acc  [0:PORTS*QUEUE-1];           // cycle of the AR handshake
    reg [63:0]       rd_acc   [0:PORTS-1];
    reg              rd_first [0:PORTS-1];
    reg [QBITS-1:0]  arq_count [0:PORTS-1];
    reg [QBITS-1:0]  arq_head  [0:PORTS-1];
    // the burst each port is sending
    reg              rd_active [0:PORTS-1];
    reg [ADDR_W-1:0] rd_addr   [0:PORTS-1];
    reg [8:0]        rd_left   [0:PORTS-1];

    // write bursts accepted, the one being written, responses owed
    reg [ADDR_W-1:0] awq_addr [0:QUEUE-1];
    reg [7:0]        awq_len  [0:QUEUE-1];
    reg [QBITS-1:0]  awq_count, awq_head;
    reg              w_active;
    reg [ADDR_W-1:0] w_addr;
    reg [8:0]        w_left;
    reg [1:0]        w_resp;
    reg [1:0]        bq_resp [0:QUEUE-1];
    reg [QBITS-1:0]  bq_count, bq_head;

    reg [1024*8-1:0] file_name;
    integer          credit;
    integer          rr, rr_next;
    integer          p, q, b, i, fd, got;
    reg [ADDR_W-1:0] a;
    reg [1:0]        resp;
    reg              have_beat;
    reg [63:0]       read_bytes;

    // Acceptance: a port's bursts not finished (queued + sending) below QUEUE, and those of all
    // ports on its controller port below GROUP_QUEUE.
    integer ga, gb, gload;
    always @* begin
        for (ga = 0; ga < PORTS; ga = ga + 1) begin
            gload = 0;
            for (gb = 0; gb < PORTS; gb = gb + 1)
                if (((PORT_GROUP >> (2 * gb)) & 3) == ((PORT_GROUP >> (2 * ga)) & 3))
                    gload = gload + arq_count[gb] + (rd_active[gb] ? 1 : 0);
            ar_ok[ga] = arq_count[ga] + (rd_active[ga] ? 1 : 0) < QUEUE && gload < GROUP_QUEUE;
        end
    end
    assign rd_arready = ar_ok;
    assign wr_awready = awq_count < QUEUE;

    initial begin
        if (!$value$plusargs("ddr_file=%s", file_name)) file_name = "ddr_host.bin";
    end

    // Response of a beat at address x: DECERR beyond the memory, SLVERR in the error window.
    function [1:0] beat_resp(input [ADDR_W-1:0] x);
        if ({32'b0, x} + DATA_BYTES > SIZE_BYTES) beat_resp = 2'b11;
        else if (err_hi > err_lo && x + DATA_BYTES > err_lo && x < err_hi) beat_resp = 2'b10;
        else beat_resp = 2'b00;
    endfunction

    function integer bank_of(input [ADDR_W-1:0] x);
        bank_of = (x >> BANK_SHIFT) % BANKS;
    endfunction
    function [ADDR_W-1:0] row_of(input [ADDR_W-1:0] x);
        row_of = x >> ROW_SHIFT;
    endfunction
    function [31:0] lfsr_next(input [31:0] x);
        lfsr_next = {x[30:0], 1'b0} ^ (x[31] ? 32'h04C11DB7 : 32'h0);
    endfunction

    // Open row r in bank b for owner o: the bank serves it MISS cycles from now (or from when it
    // is ready, if later).
    task open_bank(input integer b, input [ADDR_W-1:0] r, input integer o);
        begin
            open_ok[b] = 1;
            open_row[b] = r;
            bank_ready[b] = (bank_ready[b] > stat_cycles ? bank_ready[b] : stat_cycles) + MISS;
            bank_owner[b] = o;
            bank_used[b] = 0;
            misses = misses + 1;
        end
    endtask

    // A burst's protocol: INCR, full-width beats, aligned, inside one 4 KiB page.
    function burst_bad(input [ADDR_W-1:0] x, input [7:0] len, input [2:0] size, input [1:0] burst);
        burst_bad = burst != 2'b01 || size != SIZE_LOG2 || (x % DATA_BYTES) != 0
                    || (x % 4096) + ({24'b0, len} + 1) * DATA_BYTES > 4096;
    endfunction

    always @(posedge clk) begin
        if (rst) begin
            for (p = 0; p < PORTS; p = p + 1) begin
                arq_count[p] <= 0; arq_head[p] <= 0; rd_active[p] = 0; rd_first[p] = 0;
            end
            rd_rvalid <= 0; rd_rlast <= 0; rd_rresp <= 0;
            awq_count <= 0; awq_head <= 0; w_active = 0; wr_wready <= 0;
            bq_count <= 0; bq_head <= 0; wr_bvalid <= 0; wr_bresp <= 0;
            credit = 0; rr = 0;
            for (b = 0; b < BANKS; b = b + 1) begin
                open_ok[b] = 0; bank_ready[b] = 0; bank_owner[b] = 0; bank_used[b] = 0;
            end
            bus_free = 0; refresh_timer = 0; cpu_acc = 0; lfsr = 32'hACE1_2468;
            stat_row_misses <= 0; stat_refreshes <= 0;
            stat_bursts <= 0; stat_latency_sum <= 0; stat_latency_min <= 32'hFFFF_FFFF; stat_latency_max <= 0;
            host_ack <= 0; host_status <= 0;
            stat_read_bytes <= 0; stat_write_bytes <= 0; stat_first_read <= 0; stat_last_read <= 0;
            stat_cycles <= 0; protocol_error <= 0;
        end else begin
            stat_cycles <= stat_cycles + 1;
            credit = credit + BW_NUM;
            if (credit > CAP) credit = CAP;
            read_bytes = stat_read_bytes;
            misses = stat_row_misses;
            bursts = stat_bursts; lat_sum = stat_latency_sum; lat_min = stat_latency_min; lat_max = stat_latency_max;
            rr_next = rr;

            // ---- refresh and processor traffic ------------------------------------------
            if (REFI > 0) begin
                refresh_timer = refresh_timer + 1;
                if (refresh_timer >= REFI) begin
                    refresh_timer = 0;
                    bus_free = stat_cycles + RFC;
                    for (b = 0; b < BANKS; b = b + 1) begin
                        open_ok[b] = 0;
                        bank_ready[b] = stat_cycles + RFC;
                    end
                    stat_refreshes <= stat_refreshes + 1;
                end
            end
            if (CPU_NUM > 0) begin
                cpu_acc = cpu_acc + CPU_NUM;
                if (cpu_acc >= CPU_LINE) begin
                    cpu_acc = cpu_acc - CPU_LINE;
                    credit = credit - CPU_LINE;
                    lfsr = lfsr_next(lfsr);
                    if (ROWS) begin
                        open_bank(lfsr % BANKS, {16'h8000, lfsr[31:16]}, PORTS + 1);
                        bank_used[lfsr % BANKS] = 1;
                    end
                end
            end

            // ---- read ports, round robin from rr -------------------------------------
            for (i = 0; i < PORTS; i = i + 1) begin
                p = (rr + i) % PORTS;
                // accept a burst
                accept = rd_arvalid[p] && ar_ok[p];
                if (accept) begin
                    q = p * QUEUE + (arq_head[p] + arq_count[p]) % QUEUE;
                    arq_addr[q] = rd_araddr[p*ADDR_W +: ADDR_W] - BASE;
                    arq_len[q] = rd_arlen[p*8 +: 8];
                    arq_acc[q] = stat_cycles;
                    lfsr = lfsr_next(lfsr);
                    arq_due[q] = stat_cycles + LATENCY - 1 + (JITTER > 0 ? lfsr % (JITTER + 1) : 0);
                    if (ROWS) begin                 // look-ahead: open the burst's row now if its bank is free
                        bk = bank_of(arq_addr[q]);
                        rw = row_of(arq_addr[q]);
                        busy = 0;
                        for (q2 = 0; q2 < PORTS; q2 = q2 + 1)
                            if (rd_active[q2] && bank_of(rd_addr[q2]) == bk && row_of(rd_addr[q2]) != rw) busy = 1;
                        if ((!open_ok[bk] || open_row[bk] != rw) && !busy && stat_cycles >= bank_ready[bk]
                                && (bank_used[bk] || !open_ok[bk]))
                            open_bank(bk, rw, p);
                    end
                    if (burst_bad(rd_araddr[p*ADDR_W +: ADDR_W], rd_arlen[p*8 +: 8], rd_arsize[p*3 +: 3],
                                  rd_arburst[p*2 +: 2]))
                        protocol_error <= 1;
                end
                // retire the beat taken at this edge
                have_beat = rd_rvalid[p] && !rd_rready[p];
                if (rd_rvalid[p] && rd_rready[p]) begin
                    if (read_bytes == 0) stat_first_read <= stat_cycles;
                    read_bytes = read_bytes + DATA_BYTES;
                    stat_last_read <= stat_cycles;
                    rd_rvalid[p] <= 0;
                end
                // start the next burst when it is due
                if (!have_beat && !rd_active[p] && arq_count[p] != 0
                        && arq_due[p * QUEUE + arq_head[p]] <= stat_cycles) begin
                    q = p * QUEUE + arq_head[p];
                    rd_active[p] = 1;
                    rd_addr[p] = arq_addr[q];
                    rd_left[p] = {1'b0, arq_len[q]} + 1;
                    rd_acc[p] = arq_acc[q];
                    rd_first[p] = 1;
                    arq_head[p] <= (arq_head[p] + 1) % QUEUE;
                    arq_count[p] <= arq_count[p] - 1 + (accept ? 1 : 0);
                end else if (accept) begin
                    arq_count[p] <= arq_count[p] + 1;
                end
                // present the next beat against a beat of credit
                ok = !have_beat && rd_active[p] && credit >= BEAT && stat_cycles >= bus_free;
                if (ok && ROWS) begin               // the beat's row must be open and its bank ready
                    bk = bank_of(rd_addr[p]);
                    rw = row_of(rd_addr[p]);
                    if (!open_ok[bk] || open_row[bk] != rw) begin
                        ok = 0;
                        if (stat_cycles >= bank_ready[bk] && (bank_used[bk] || bank_owner[bk] == p || !open_ok[bk]))
                            open_bank(bk, rw, p);
                    end else if (stat_cycles < bank_ready[bk]) begin
                        ok = 0;
                    end else begin
                        bank_used[bk] = 1;
                    end
                end
                if (ok) begin
                    credit = credit - BEAT;
                    rr_next = (p + 1) % PORTS;      // priority passes to the port after the one served
                    a = rd_addr[p];
                    resp = beat_resp(a);
                    for (b = 0; b < DATA_BYTES; b = b + 1)
                        rd_rdata[(p*DATA_BYTES + b)*8 +: 8] <= (resp == 2'b11) ? 8'h00 : mem[a + b];
                    rd_rresp[p*2 +: 2] <= resp;
                    rd_rlast[p] <= rd_left[p] == 1;
                    rd_rvalid[p] <= 1;
                    if (rd_first[p]) begin             // latency: AR handshake to this beat's RVALID
                        rd_first[p] = 0;
                        lat = stat_cycles + 1 - rd_acc[p];
                        bursts = bursts + 1;
                        lat_sum = lat_sum + lat;
                        if (lat < lat_min) lat_min = lat;
                        if (lat > lat_max) lat_max = lat;
                    end
                    rd_addr[p] = a + DATA_BYTES;
                    rd_left[p] = rd_left[p] - 1;
                    if (rd_left[p] == 0) rd_active[p] = 0;
                end
            end
            rr = rr_next;
            stat_read_bytes <= read_bytes;
            stat_row_misses <= misses;
            stat_bursts <= bursts; stat_latency_sum <= lat_sum;
            stat_latency_min <= lat_min; stat_latency_max <= lat_max;

            // ---- write port -----------------------------------------------------------
            if (wr_awvalid && awq_count < QUEUE) begin
                q = (awq_head + awq_count) % QUEUE;
                awq_addr[q] = wr_awaddr - BASE;
                awq_len[q] = wr_awlen;
                if (burst_bad(wr_awaddr, wr_awlen, wr_awsize, wr_awburst)) protocol_error <= 1;
            end
            if (!w_active && awq_count != 0) begin
                w_active = 1;
                w_addr = awq_addr[awq_head];
                w_left = {1'b0, awq_len[awq_head]} + 1;
                w_resp = 0;
                credit = credit - TURN * BW_NUM;
                if (ROWS) begin
                    bk = bank_of(w_addr);
                    if (!open_ok[bk] || open_row[bk] != row_of(w_addr)) begin
                        open_bank(bk, row_of(w_addr), PORTS);
                        bank_used[bk] = 1;
                    end
                end
                awq_head <= (awq_head + 1) % QUEUE;
                awq_count <= awq_count - 1 + ((wr_awvalid && awq_count < QUEUE) ? 1 : 0);
            end else if (wr_awvalid && awq_count < QUEUE) begin
                awq_count <= awq_count + 1;
            end
            if (wr_wready && wr_wvalid) begin
                resp = beat_resp(w_addr);
                if (resp == 2'b00)
                    for (b = 0; b < DATA_BYTES; b = b + 1)
                        if (wr_wstrb[b]) mem[w_addr + b] <= wr_wdata[b*8 +: 8];
                if (resp > w_resp) w_resp = resp;
                if (wr_wlast != (w_left == 1)) protocol_error <= 1;
                stat_write_bytes <= stat_write_bytes + DATA_BYTES;
                w_addr = w_addr + DATA_BYTES;
                w_left = w_left - 1;
                if (w_left == 0) begin
                    w_active = 0;
                    bq_resp[(bq_head + bq_count) % QUEUE] = w_resp;
                end
            end
            // offer the next beat slot (paid when offered; an offer stands until taken)
            if ((!wr_wready || wr_wvalid) && w_active && credit >= BEAT && stat_cycles >= bus_free) begin
                credit = credit - BEAT;
                wr_wready <= 1;
            end else if (wr_wready && wr_wvalid) begin
                wr_wready <= 0;
            end
            // write responses
            if (wr_bvalid && wr_bready) begin
                wr_bvalid <= 0;
            end
            begin : responses
                reg pushed, popped;
                pushed = wr_wready && wr_wvalid && !w_active;
                popped = 0;
                if ((!wr_bvalid || wr_bready) && (bq_count != 0 || pushed)) begin
                    wr_bresp <= bq_resp[bq_head];
                    wr_bvalid <= 1;
                    popped = 1;
                end
                bq_head <= popped ? (bq_head + 1) % QUEUE : bq_head;
                bq_count <= bq_count + (pushed ? 1 : 0) - (popped ? 1 : 0);
            end

            // ---- host access ------------------------------------------------------------
            host_ack <= host_load || host_dump;
            if (host_load || host_dump) begin
                if ({32'b0, host_addr} + {32'b0, host_len} > SIZE_BYTES) begin
                    host_status <= 2;
                end else begin
                    fd = $fopen(file_name, host_load ? "rb" : "wb");
                    if (fd == 0) begin
                        host_status <= 1;
                    end else if (host_load) begin
                        got = host_len == 0 ? 0 : $fread(mem, fd, host_addr, host_len);
                        $fclose(fd);
                        host_status <= (got == host_len) ? 0 : 3;
                    end else begin
                        for (i = 0; i + 8 <= host_len; i = i + 8)
                            $fwrite(fd, "%c%c%c%c%c%c%c%c", mem[host_addr+i], mem[host_addr+i+1],
                                    mem[host_addr+i+2], mem[host_addr+i+3], mem[host_addr+i+4],
                                    mem[host_addr+i+5], mem[host_addr+i+6], mem[host_addr+i+7]);
                        for (; i < host_len; i = i + 1)
                            $fwrite(fd, "%c", mem[host_addr+i]);
                        $fclose(fd);
                        host_status <= 0;
                    end
                end
            end
        end
    end
endmodule
