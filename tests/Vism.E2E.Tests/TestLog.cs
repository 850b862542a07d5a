using Xunit.Abstractions;

namespace Vism.E2E.Tests;

/// <summary>Test output that can also be followed live: with VISM_E2E_LOG=FILE every line is
/// appended to FILE as it happens (xunit shows a test's output only when the test ends).</summary>
internal static class TestLog
{
    private static readonly Lock FileLock = new();

    public static Action<string> For(ITestOutputHelper output)
    {
        string? file = Environment.GetEnvironmentVariable("VISM_E2E_LOG");
        return line =>
        {
            if (file is not null)
                lock (FileLock) File.AppendAllText(file, $"{DateTime.Now:HH:mm:ss.fff} {line}\n");
            try { output.WriteLine(line); }
            catch (InvalidOperationException) { } // the test already finished
        };
    }
}
