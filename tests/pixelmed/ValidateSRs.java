import com.pixelmed.validate.DicomSRValidator;

/** Validates every file named with one pixelmed DicomSRValidator (one JVM, one stylesheet
 * compilation); each file's report follows a line "=== FILE path". */
public class ValidateSRs {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String path : args) {
            System.out.println("=== FILE " + path);
            System.out.print(validator.validate(path));
            System.out.flush();
        }
    }
}
