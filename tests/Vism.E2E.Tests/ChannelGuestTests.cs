using System.Security.Cryptography;
using Vism.Testing;
using Xunit.Abstractions;

namespace Vism.E2E.Tests;

/// <summary>
/// Issue 19's guest proof: two QEMU 11.1 guests stream a file through a vism channel
/// (docs/channel.md). Guest A runs <c>vism-guest channel send --peer B's devid /data.bin</c>: it
/// ALLOCs a region, GRANTs it to B's devid alone and prints the token; guest B runs
/// <c>vism-guest channel recv TOKEN /tmp/recv.bin</c>. Both print the SHA-256 of what crossed, which
/// must equal the file's.
/// </summary>
public sealed class ChannelGuestTests(ITestOutputHelper testOutput)
{
    private readonly Action<string> _log = TestLog.For(testOutput);
    private static readonly TimeSpan Boot = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan Run = TimeSpan.FromMinutes(15);

    [SkippableFact]
    public async Task TwoGuests_StreamAFileThroughAChannel_AndTheHashesMatch()
    {
        _ = Machine.QemuRoot; // skips before vism starts when QEMU is not prepared
        await using var vism = await VismProcess.StartAsync(["a", "b"], _log);
        ulong devidB = vism.Status().Devices.Single(d => d.Name == "b").DevId;
        byte[] data = RandomNumberGenerator.GetBytes(4 << 20); // 4 MiB: eight rings' worth of a 1 MiB region
        string expected = Convert.ToHexStringLower(SHA256.HashData(data));

        await using var guestA = QemuGuest.Start(new QemuGuestOptions
        {
            Name = "chan-a",
            VhostUserSocket = vism.Socket("a"),
            Flow = "channel send --peer $peer /data.bin\n",
            Files = [("data.bin", data)],
            Variables = new Dictionary<string, string> { ["peer"] = $"0x{devidB:x}" },
            Timeout = Run,
        }, _log);
        string listen = await guestA.WaitForLineAsync(l => l.StartsWith("channel listen ", StringComparison.Ordinal), Boot);
        Assert.Equal(devidB, GuestOutput.Number(listen, "peer"));

        await using var guestB = QemuGuest.Start(new QemuGuestOptions
        {
            Name = "chan-b",
            VhostUserSocket = vism.Socket("b"),
            Flow = "channel recv $token /tmp/recv.bin\n",
            Variables = new Dictionary<string, string> { ["token"] = GuestOutput.Field(listen, "token")! },
            Timeout = Run,
        }, _log);
        GuestRun runB = await guestB.Completion;
        GuestRun runA = await guestA.Completion;
        _log(runA.ToString());
        _log(runB.ToString());

        Assert.Equal(0, runA.FlowExitCode);
        Assert.Equal(0, runB.FlowExitCode);
        string? sent = runA.Line("channel sent"), received = runB.Line("channel received");
        Assert.Equal((ulong)data.Length, GuestOutput.Number(sent, "bytes"));
        Assert.Equal((ulong)data.Length, GuestOutput.Number(received, "bytes"));
        Assert.Equal(expected, GuestOutput.Field(sent, "sha256"));
        Assert.Equal(expected, GuestOutput.Field(received, "sha256"));
        _log($"4 MiB through the channel under TCG: sender {GuestOutput.Field(sent, "seconds")} s, receiver {GuestOutput.Field(received, "seconds")} s");

        // The region was A's alone to give: B's devid was granted and joined; both ends are gone now.
        Assert.Equal($"0x{devidB:x}", GuestOutput.Field(runA.Line("channel accepted"), "peer"));
        // vism releases a guest's attachments when its QEMU disconnects, on the device's loop: the
        // guests' exit can be seen before that turn has run.
        Assert.True(SpinWait.SpinUntil(() => vism.Status().Regions.Count == 0, TimeSpan.FromSeconds(20)), "the region outlived both guests");
        Assert.Empty(vism.Status().Regions);
        Assert.Equal(0, await vism.StopAsync());
    }
}
