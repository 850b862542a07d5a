using Vism.Testing;
using Xunit.Abstractions;

namespace Vism.E2E.Tests;

/// <summary>
/// The guest image and vism-guest on their own, without a vism backend: a guest whose VM has no
/// ISM device, a virtio device without ISM windows, and the ring code against QEMU's own
/// virtio-rng (so a ring bug shows up here, not as a mystery in the two-guest test).
/// </summary>
public sealed class GuestImageTests(ITestOutputHelper testOutput)
{
    private readonly Action<string> _log = TestLog.For(testOutput);

    private static readonly TimeSpan Boot = TimeSpan.FromMinutes(5);

    private async Task<GuestRun> RunAsync(QemuGuestOptions options)
    {
        await using var guest = QemuGuest.Start(options with { Timeout = Boot }, _log);
        GuestRun run = await guest.Completion;
        _log(run.ToString());
        Assert.False(run.TimedOut, $"guest {options.Name} did not power off within {Boot}");
        return run;
    }

    [SkippableFact]
    public async Task GuestWithoutIsmDevice_ReportsDeviceMissing_WithExitCode2()
    {
        GuestRun run = await RunAsync(new QemuGuestOptions { Name = "nodev", Role = "info" });

        Assert.Equal(2, run.FlowExitCode);
        Assert.Contains(run.Output, l => l.Contains("no virtio-ism device", StringComparison.Ordinal)
                                         && l.Contains("1af4:106c", StringComparison.Ordinal));
        Assert.Equal(0, run.QemuExitCode);
    }

    [SkippableFact]
    public async Task VirtioDeviceWithoutRegionsWindow_IsRefused_NamingTheMissingCapability()
    {
        GuestRun run = await RunAsync(new QemuGuestOptions
        {
            Name = "norgn",
            Role = "info",
            Variables = new Dictionary<string, string> { ["id"] = "4" },
            ExtraArguments = ["-device", "virtio-rng-pci-non-transitional"],
        });

        Assert.Equal(3, run.FlowExitCode);
        Assert.Contains(run.Output, l => l.Contains("missing capability: shared memory REGIONS", StringComparison.Ordinal));
    }

    [SkippableFact]
    public async Task RingCode_DrivesQemuVirtioRng_ThroughWrappingRings()
    {
        GuestRun run = await RunAsync(new QemuGuestOptions
        {
            Name = "rng",
            Role = "ring-selftest",
            ExtraArguments = ["-device", "virtio-rng-pci-non-transitional"],
        });

        Assert.Equal(0, run.FlowExitCode);
        string? ok = run.Line("ring-selftest");
        Assert.NotNull(ok);
        Assert.StartsWith("ring-selftest ok", ok, StringComparison.Ordinal);
        Assert.Equal(200UL, GuestOutput.Number(ok, "rounds"));
    }

    [SkippableFact]
    public async Task InlineFlow_AppendedToTheImage_IsWhatTheGuestRuns()
    {
        GuestRun run = await RunAsync(new QemuGuestOptions
        {
            Name = "flow",
            Flow = "echo first $greeting\nsleep 0\necho second\n",
            Variables = new Dictionary<string, string> { ["greeting"] = "hello-from-the-command-line" },
        });

        Assert.Equal(0, run.FlowExitCode);
        Assert.Equal(["> echo first $greeting", "first hello-from-the-command-line", "> sleep 0", "> echo second", "second"],
                     run.Output.Where(l => !l.StartsWith('[')).ToArray());
    }
}
