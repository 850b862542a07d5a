using Xunit.Abstractions;

namespace Vism.E2E.Tests;

/// <summary>The <c>vism run</c> process the end-to-end tests start, on its own.</summary>
public sealed class VismRunTests(ITestOutputHelper testOutput)
{
    private readonly Action<string> _log = TestLog.For(testOutput);

    /// <summary>Three devices on two loops, so two of them share a loop (as on any host with fewer
    /// cores than devices): SIGTERM must still stop every device and end the process with 0.</summary>
    [Fact]
    public async Task ServingDevicesThatShareALoop_StopsOnSigterm_WithExitCode0()
    {
        await using var vism = await VismProcess.StartAsync(["a", "b", "c"], _log, loops: 2);

        Assert.Equal(3, vism.Status().Devices.Count);
        Assert.Equal(0, await vism.StopAsync());
        Assert.All(new[] { "a", "b", "c" }, d => Assert.False(File.Exists(vism.Socket(d)), $"socket of {d} left behind"));
    }
}
